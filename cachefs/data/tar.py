"""WebDataset-style tar shards, parsed in place over cached bytes.

A tar archive is a sequence of 512-byte header blocks, each followed by its
member's data padded to a whole block, and ends with a zero block (or simply
with the file). :class:`TarReader` parses the headers itself — Python's
``tarfile`` would copy every member — and hands out each member's data as a
memoryview of the cached chunk that holds it (one copy only for a member that
spans chunks).

Understood: ustar (with its name prefix), GNU long names (``L``) and long
link names (``K``, skipped), pax extended headers (``x``: ``path`` and
``size``; global ``g`` headers are skipped), base-256 sizes. Directories,
links and devices are skipped; GNU sparse members are refused.

Members are grouped into samples the WebDataset way: the *key* is the member
name up to the first dot of its basename, the rest is the field name
(``"a/b/x001.seg.png"`` → key ``"a/b/x001"``, field ``"seg.png"``);
consecutive members with the same key form one sample. A member whose
basename has no dot after its first character has no field name and is
skipped (as WebDataset does).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from cachefs.data.errors import ShardFormatError

__all__ = ["BLOCK", "TarMember", "TarReader", "split_key"]

#: The tar block size.
BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_EMPTY = memoryview(b"")
# Types whose size field is not followed by data (tarfile skips nothing
# after them either): hard link, symlink, char/block device, directory, fifo.
_NO_DATA = frozenset(b"123456")
_REGULAR = frozenset(b"0\x007")
_EXTENSIONS = frozenset(b"LKxg")
_USTAR = b"ustar\x00"
# Bytes read at a time from a file without read_view (each read is a copy).
_PLAIN_BLOCK = 1 << 20


class _Readable(Protocol):
    def seek(self, offset: int, whence: int = ..., /) -> int: ...
    def read(self, size: int = ..., /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class TarMember:
    """One archive member, as found in its header.

    Attributes
    ----------
    name
        The member's path (long and pax names applied).
    kind
        ``"file"``, ``"dir"`` or ``"other"`` (links, devices).
    start
        Offset of the member's first header block (extension headers
        included): where a reader starts to read this member.
    offset
        Offset of the member's data.
    size
        Bytes of data.
    next
        Offset of the next member's first header block.
    """

    name: str
    kind: str
    start: int
    offset: int
    size: int
    next: int


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def split_key(name: str) -> tuple[str, str] | None:
    """Split a member name into ``(key, field)``; ``None`` when it has no field.

    The key runs up to the first dot of the basename; a basename with no dot
    after its first character gives ``None``.
    """
    base = name.rfind("/") + 1
    dot = name.find(".", base + 1)
    if dot < 0:
        return None
    return name[:dot], name[dot + 1 :]


def _byte_sum(raw: bytes) -> int:
    # The low 16 bits of Adler-32 are 1 + the byte sum modulo 65521; a
    # 256-byte half sums to at most 65280, so each half's sum is exact. This
    # is ~20x faster than sum() over the 512 bytes of every header.
    return (zlib.adler32(raw[:256]) & 0xFFFF) + (zlib.adler32(raw[256:]) & 0xFFFF) - 2


def _checksum_ok(raw: bytes) -> bool:
    field = raw[148:156].split(b"\x00", 1)[0].strip()
    try:
        stored = int(field or b"0", 8)
    except ValueError:
        return False
    # The checksum is the sum of the header with its own field read as spaces.
    unsigned = _byte_sum(raw) - sum(raw[148:156]) + 8 * 32
    if stored == unsigned:
        return True
    signed = sum(b - 256 if b > 127 else b for b in raw) - sum(
        b - 256 if b > 127 else b for b in raw[148:156]
    )
    return stored == signed + 8 * 32


def _number(field: bytes) -> int:
    """Decode a numeric header field (octal, or GNU base-256); raise ValueError."""
    if field[0] in (0x80, 0xFF):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0xFF else value
    text = field.split(b"\x00", 1)[0].strip()
    return int(text or b"0", 8)


def _text(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


class TarReader:
    """Reads members and samples of one tar shard.

    Parameters
    ----------
    f
        The shard opened for reading: a :class:`cachefs.CachedFile` (read
        with ``read_view``, no copy) or any seekable binary file (read with
        ``read``, one copy).
    url
        The shard's URL, for error messages.
    size
        The shard's size in bytes (taken from ``f`` when omitted).
    """

    def __init__(self, f: Any, url: str, size: int | None = None) -> None:
        self.f = f
        self.url = url
        self.size = size if size is not None else _file_size(f)
        read_view = getattr(f, "read_view", None)
        self._read: Callable[[int], memoryview] = (
            read_view if read_view is not None else _copying_reader(f)
        )
        chunk = getattr(f, "chunk_size", None) if read_view is not None else None
        self._chunk: int | None = chunk if isinstance(chunk, int) else None
        # The bytes read last: headers and data are sliced out of it.
        self._buf = _EMPTY
        self._base = 0
        #: Where the last :meth:`samples` call stopped reading headers.
        self.stopped_at = 0
        #: Where each sample the last :meth:`samples` call passed starts,
        #: skipped ones included: a reader that went through a whole shard
        #: has thereby indexed it.
        self.starts: list[int] = []

    def _bytes(self, offset: int, n: int) -> memoryview:
        """Return the shard's bytes ``[offset, offset + n)`` (fewer at its end).

        Reads go to the file a chunk at a time (the rest of the chunk that
        holds ``offset``), and members are sliced out of that view: one
        ``read_view`` call per chunk, not two per member, and no copy. A
        range that spans chunks is read alone (copied once).
        """
        if n <= 0:
            return _EMPTY
        rel = offset - self._base
        if rel >= 0 and rel + n <= len(self._buf):
            return self._buf[rel : rel + n]
        if self._chunk is not None:
            want = max(n, (offset // self._chunk + 1) * self._chunk - offset)
        else:
            want = max(n, _PLAIN_BLOCK)
        self.f.seek(offset)
        buf = self._read(max(min(want, self.size - offset), 0))
        self._buf, self._base = buf, offset
        return buf[:n]

    def _error(self, offset: int, reason: str) -> ShardFormatError:
        return ShardFormatError.at(self.url, offset, reason)

    def member_at(self, pos: int) -> TarMember | None:
        """Parse the member whose first header block is at ``pos``.

        Returns ``None`` at the end of the archive (a zero block or the end
        of the file).

        Raises
        ------
        ShardFormatError
            For a damaged or truncated header, or data past the file's end.
        """
        start = pos
        long_name: str | None = None
        pax: dict[str, str] = {}
        while True:
            if pos >= self.size:
                if pos > start:
                    raise self._error(pos, "archive ends after an extension header")
                return None
            block = self._bytes(pos, BLOCK)
            if len(block) < BLOCK:
                raise self._error(
                    pos, f"truncated header ({len(block)} of {BLOCK} bytes)"
                )
            raw = bytes(block)
            if raw == _ZERO_BLOCK:
                if pos > start:
                    raise self._error(pos, "end of archive after an extension header")
                return None
            if not _checksum_ok(raw):
                raise self._error(pos, "bad tar header checksum (not a tar file?)")
            typeflag = raw[156]
            try:
                size = _number(raw[124:136])
                if "size" in pax and typeflag not in _EXTENSIONS:
                    size = int(pax["size"])
            except ValueError:
                raise self._error(pos, "invalid size field in tar header") from None
            if size < 0:
                raise self._error(pos, f"negative member size {size}")
            data = pos + BLOCK
            if typeflag in _EXTENSIONS:
                if data + size > self.size:
                    raise self._error(pos, "truncated extension header data")
                payload = bytes(self._bytes(data, size))
                if typeflag == ord("L"):
                    long_name = _text(payload)
                elif typeflag == ord("x"):
                    pax.update(self._pax(payload, data))
                pos = data + _padded(size)
                continue
            if typeflag == ord("S"):
                raise self._error(pos, "GNU sparse members are not supported")
            name = _text(raw[0:100])
            if raw[257:263] == _USTAR:
                prefix = _text(raw[345:500])
                if prefix:
                    name = f"{prefix}/{name}"
            name = pax.get("path") or long_name or name
            if typeflag in _REGULAR and not (typeflag == 0 and name.endswith("/")):
                kind, has_data = "file", True
            elif typeflag == ord("5") or typeflag == 0:
                kind, has_data = "dir", False
            else:
                kind, has_data = "other", typeflag not in _NO_DATA
            if has_data and data + size > self.size:
                raise self._error(
                    pos,
                    f"member {name!r} needs {size} bytes of data, "
                    f"the shard ends {self.size - data} bytes after its header",
                )
            nxt = data + _padded(size) if has_data else data
            return TarMember(name, kind, start, data, size if has_data else 0, nxt)

    def _pax(self, payload: bytes, offset: int) -> dict[str, str]:
        out: dict[str, str] = {}
        pos = 0
        while pos < len(payload) and payload[pos] != 0:
            space = payload.find(b" ", pos)
            try:
                length = int(payload[pos:space]) if space > pos else 0
            except ValueError:
                length = 0
            record = payload[space + 1 : pos + length]
            key, eq, value = record[:-1].partition(b"=")
            if length <= 0 or not record.endswith(b"\n") or not eq:
                raise self._error(offset + pos, "malformed pax header record")
            out[key.decode("utf-8", "surrogateescape")] = value.decode(
                "utf-8", "surrogateescape"
            )
            pos += length
        return out

    def data(self, member: TarMember) -> memoryview:
        """Return the member's data (a view into the cache when possible)."""
        if member.size == 0:
            return _EMPTY
        # Reading the padding too keeps the file's reads back to back when a
        # member spans chunks, so its readahead sees one sequential reader.
        return self._bytes(member.offset, member.next - member.offset)[: member.size]

    def members(self, start: int = 0) -> Iterator[TarMember]:
        """Yield every member from offset ``start`` on, directories included."""
        pos = start
        while (member := self.member_at(pos)) is not None:
            yield member
            pos = member.next

    def samples(
        self,
        start: int = 0,
        end: int | None = None,
        *,
        skip: int = 0,
        limit: int | None = None,
    ) -> Iterator[tuple[int, str, dict[str, memoryview]]]:
        """Yield ``(offset, key, fields)`` for each sample, in archive order.

        Parameters
        ----------
        start
            Offset of the first header to read (a sample's start offset).
        end
            Stop before a header at or past this offset.
        skip
            Samples to pass over first; their data is not read.
        limit
            Samples to yield at most; reading stops at the next sample's
            first header.

        Notes
        -----
        ``offset`` is where the sample's first header starts: reading from
        there yields this sample first. ``fields`` maps each field name to
        the member's data. :attr:`stopped_at` is set to the offset where
        reading stopped.
        """
        pos = start
        key: str | None = None
        fields: dict[str, memoryview] = {}
        first_at = start
        index = -1
        produced = 0
        starts = self.starts = []
        while end is None or pos < end:
            member = self.member_at(pos)
            if member is None:
                break
            split = split_key(member.name) if member.kind == "file" else None
            if split is None:
                pos = member.next
                continue
            if split[0] != key:
                if key is not None and index >= skip:
                    yield first_at, key, fields
                    produced += 1
                    if limit is not None and produced >= limit:
                        break
                key, fields, first_at = split[0], {}, member.start
                starts.append(first_at)
                index += 1
            field = split[1]
            if field in fields:
                raise self._error(
                    member.start, f"member {member.name!r} repeats field {field!r}"
                )
            fields[field] = self.data(member) if index >= skip else _EMPTY
            pos = member.next
        self.stopped_at = pos
        if key is not None and index >= skip and (limit is None or produced < limit):
            yield first_at, key, fields


def _file_size(f: Any) -> int:
    size = getattr(f, "size", None)
    if isinstance(size, int):
        return size
    here = f.tell()
    end: int = f.seek(0, 2)
    f.seek(here)
    return end


def _copying_reader(f: _Readable) -> Callable[[int], memoryview]:
    def read(n: int) -> memoryview:
        return memoryview(f.read(n))

    return read
