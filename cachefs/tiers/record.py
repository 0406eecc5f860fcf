"""The stored form of a chunk: header and block table, codec config, payload.

Disk and shared tiers store chunks in this one format, so a chunk can move
between them unchanged and is verified the same way wherever it is read::

    header (32 bytes): magic, format, codec id, codec config length,
                       CRC32C, raw length, stored length, block size
    block table:       one check per payload block (4 bytes each), then
                       one check of the whole payload
    codec config:      JSON of a numcodecs codec (only when compressed)
    payload:           raw or compressed chunk bytes

The payload is cut into at most :data:`BLOCK_SLOTS` blocks of one size (a
multiple of 4 KiB; 16 KiB for a 4 MiB chunk), each with its own check in
the block table, so a reader verifies only the blocks it reads
(:class:`BlockCheck`); a reader of a quarter chunk or more at once checks
the whole payload's instead, one call at full speed, where 256 calls
over 16 KiB blocks cost a sequential reader half its throughput. A check
is the low 32 bits of the payload's XXH3-64 (format 5): a writer computes
257 of them per chunk and a first reader one or a few, and XXH3 runs at
about twice CRC32C's speed here (4 MiB: 0.34 against 0.48-0.65 ms for the
blocks and the whole, docs/architecture.md). The header's CRC32C covers
the chunk's key digest,
the header (that field zeroed), the block table and the codec config: a
record is valid only under the key it was written for, so a record copied
or swapped to another chunk's name is damage, not a hit, and a block is
valid only if its bytes match its check. Only the codecs in
:data:`ALLOWED_CODECS` are ever built from a record; any other codec id is
damage too.

Format 6 is format 5 with zeros after the codec config up to the next
4 KiB boundary, where the payload starts: what a writer that bypasses the
page cache writes (``O_DIRECT`` needs the payload's file offset aligned,
:mod:`cachefs.tiers.direct`); :func:`payload_offset` says where a record's
payload starts. Format 4 (the same layout, with CRC32C checks) and format 2 (one CRC32C
over key, header, config and payload, no block table) are still read;
format 1, format 3 (a block table without the whole payload's check, never
released) and unknown formats are damage. :func:`record_overhead` says how
many bytes a record adds to its payload.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import crc32c
import xxhash

__all__ = [
    "ALLOWED_CODECS",
    "BLOCK_SLOTS",
    "CHUNK_HEADER",
    "BlockCheck",
    "ChunkRecord",
    "RecordCodec",
    "block_size",
    "codec_config",
    "payload_offset",
    "record_overhead",
]

#: Block checks a record holds at most: the payload's blocks are sized so it
#: has this many or fewer. 256 puts 16 KiB blocks in a 4 MiB chunk: a 4 KiB
#: random read checks 16 KiB (a few microseconds), where a 64 KiB block cost
#: as much as a 4 KiB pread with CRC32C; smaller blocks cost more calls per
#: chunk written (docs/architecture.md).
BLOCK_SLOTS = 256
_PAGE = 4096
#: magic, format version, codec id, codec config length, header crc32c (of
#: the key digest, this header with the field zeroed, the block table and
#: the config), raw length, stored payload length, block size in 4 KiB
#: units. The block table follows: one crc32c per payload block.
CHUNK_HEADER = struct.Struct("<4sBBHIQQH2x")
#: Format 2: the same first fields, one crc32c over key, header, config and
#: payload, no block table.
_WHOLE_HEADER = struct.Struct("<4sBBHIQQ4x")
_MAGIC = b"CFSC"
_FORMAT = 5
#: Format 5 with the payload starting at the next 4 KiB boundary (the bytes
#: between are zeros, and ignored): written where the writer bypasses the
#: page cache (``O_DIRECT`` needs the payload's file offset aligned).
_FORMAT_ALIGNED = 6
_FORMAT_CRC_BLOCKS = 4  # still read: the same layout, CRC32C checks
_FORMAT_WHOLE = 2  # still read, verified whole; 1 (no key binding) is damage
_CODEC_NONE = 0
_CODEC_NUMCODECS = 1  # a numcodecs codec; its JSON config follows the header
# Store compressed only when it saves at least this fraction.
_MIN_SAVING = 0.05
_DIGEST_BYTES = 20
#: numcodecs codec ids a record may name: byte compressors only. Anything
#: that builds objects (pickle, msgpack, json, vlen-*, categorize...) is never
#: built from a file, whatever numcodecs' own switches say.
ALLOWED_CODECS = frozenset({"zstd", "lz4", "blosc", "zlib", "gzip", "bz2", "lzma"})
_MAX_CONFIG = 4096


def xxh3_check(data: bytes | memoryview) -> int:
    """Return the check a format 5 record keeps: the low 32 bits of XXH3-64."""
    return xxhash.xxh3_64_intdigest(data) & 0xFFFFFFFF


_CHECKS: dict[int, Any] = {
    _FORMAT: xxh3_check,
    _FORMAT_ALIGNED: xxh3_check,
    _FORMAT_CRC_BLOCKS: crc32c.crc32c,
}


def block_size(stored: int) -> int:
    """Return the block size for a payload of ``stored`` bytes.

    A multiple of 4 KiB, large enough that the payload has at most
    :data:`BLOCK_SLOTS` blocks.
    """
    per = -(-stored // BLOCK_SLOTS)
    return max(_PAGE, -(-per // _PAGE) * _PAGE)


def _payload_at(fmt: int, config_end: int) -> int:
    """Where a record's payload starts, its codec config ending at ``config_end``.

    Right there, or in format 6 at the next 4 KiB boundary (zeros between).
    """
    return config_end + -config_end % _PAGE if fmt == _FORMAT_ALIGNED else config_end


def record_overhead(stored: int, *, aligned: bool = False) -> int:
    """Return the bytes a raw record adds to a payload of ``stored`` bytes.

    With ``aligned`` (format 6), the header padded to the next 4 KiB.
    """
    head = CHUNK_HEADER.size + 4 * (-(-stored // block_size(stored)) + 1)
    return _payload_at(_FORMAT_ALIGNED if aligned else _FORMAT, head)


def payload_offset(head: bytes | memoryview) -> int:
    """Return where the payload starts in a record beginning with ``head``.

    ``head`` holds at least the header (:data:`CHUNK_HEADER`); for a
    format it does not know, the offset a format 5 record would have.
    """
    fields = CHUNK_HEADER.unpack_from(head)
    fmt, conf_len, stored = int(fields[1]), int(fields[3]), int(fields[6])
    return _payload_at(fmt, record_overhead(stored) + conf_len)


class BlockCheck:
    """The blocks of one payload and which of them are verified yet.

    A reader calls :meth:`verify` for the bytes it is about to hand out;
    each block is checked against its check once, the first time it is
    asked for. Safe from several threads: a block two threads check at once
    is checked twice, never skipped.

    Parameters
    ----------
    payload
        The stored payload.
    size
        The block size.
    crcs
        One check per block.
    whole
        The check of the whole payload: a reader of a large span checks it
        in one call when no block is verified yet.
    check
        The function the checks were made with (:func:`xxh3_check`, or
        CRC32C for format 4).

    Attributes
    ----------
    checked
        Bytes verified so far.
    sink
        An object whose ``verified_bytes`` each check adds to (the tier that
        mapped the payload), or ``None``.
    bad
        The index of the first block found damaged, or ``None``.
    """

    # __weakref__: a file object remembers a map's check weakly (cachefs.file).
    __slots__ = (
        "__weakref__",
        "bad",
        "check",
        "checked",
        "crcs",
        "payload",
        "pending",
        "sink",
        "size",
        "whole",
    )

    def __init__(
        self,
        payload: memoryview,
        size: int,
        crcs: tuple[int, ...],
        whole: int,
        check: Any = xxh3_check,
    ) -> None:
        self.payload = payload
        self.check = check
        self.size = size
        self.crcs = crcs
        self.whole = whole
        self.pending = bytearray(b"\x01") * len(crcs)
        self.checked = 0
        self.sink: Any = None
        self.bad: int | None = None

    @property
    def why(self) -> str:
        """Say which block failed its check (after :meth:`verify` said so)."""
        return (
            f"failed the check of its block {self.bad} "
            f"(payload bytes {(self.bad or 0) * self.size}+{self.size})"
        )

    @property
    def complete(self) -> bool:
        """Whether every block is verified."""
        return 1 not in self.pending

    def verify(self, lo: int = 0, hi: int | None = None) -> bool:
        """Verify the blocks holding payload bytes ``[lo, hi)``; whether sound.

        ``hi`` ``None`` means the end of the payload. A damaged block sets
        :attr:`bad` and makes this and every later call ``False``.
        """
        if self.bad is not None:
            return False
        size, pending, payload = self.size, self.pending, self.payload
        end = payload.nbytes
        if hi is not None and hi < end:
            end = hi
        if lo < end <= lo + size and not (
            pending[lo // size] or pending[(end - 1) // size]
        ):
            # A small read (one block, or two across a boundary) of blocks
            # verified before: a random reader's common case, kept short.
            return True
        check = self.check
        if 4 * (end - lo) >= payload.nbytes and self.checked == 0:
            # A big first read: one call over the payload, at full speed.
            if check(payload) == self.whole:
                pending[:] = bytes(len(pending))
                self.checked = payload.nbytes
                if self.sink is not None:
                    self.sink.verified_bytes += payload.nbytes
                return True
            lo, end = 0, payload.nbytes  # damaged somewhere: find the block
        crcs, sink = self.crcs, self.sink
        for i in range(lo // size, -(-end // size)):
            if pending[i]:
                at = i * size
                block = payload[at : at + size]
                if check(block) != crcs[i]:
                    self.bad = i
                    return False
                pending[i] = 0
                n = block.nbytes
                self.checked += n
                if sink is not None:
                    sink.verified_bytes += n
        return True


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """A parsed, verified record.

    Attributes
    ----------
    payload
        The stored payload (a view into the record's buffer).
    config
        The codec config bytes, empty for a raw payload.
    blocks
        The payload's blocks still to verify before their bytes are read
        (:meth:`RecordCodec.check` with ``lazy``), or ``None``: verified.
    """

    payload: memoryview
    config: bytes
    blocks: BlockCheck | None = None

    @property
    def compressed(self) -> bool:
        """Whether the payload must be decoded."""
        return bool(self.config)


def _digest_bytes(digest: str) -> bytes:
    try:
        raw = bytes.fromhex(digest)
    except ValueError:
        raw = b""
    if len(raw) != _DIGEST_BYTES:
        raise ValueError(f"not a chunk key digest: {digest!r}")
    return raw


def _plain_json(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is JSON data of scalars, lists and string-keyed dicts."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if depth > 3:
        return False
    if isinstance(value, list):
        return all(_plain_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(
            isinstance(k, str) and _plain_json(v, depth + 1) for k, v in value.items()
        )
    return False


def codec_config(raw: bytes | memoryview) -> dict[str, Any] | None:
    """Return the codec config a record names, or ``None`` if it is refused.

    A config is accepted only as a JSON object of plain values whose ``id``
    is in :data:`ALLOWED_CODECS`.
    """
    if len(raw) > _MAX_CONFIG:
        return None
    try:
        config = json.loads(bytes(raw))
    except (ValueError, UnicodeDecodeError):
        return None
    if (
        not isinstance(config, dict)
        or config.get("id") not in ALLOWED_CODECS
        or not _plain_json(config)
    ):
        return None
    return config


@dataclass(slots=True)
class RecordCodec:
    """Encodes chunks into records and verifies and decodes them back.

    Parameters
    ----------
    codec
        The numcodecs codec to compress new records with, or ``None``; its id
        must be in :data:`ALLOWED_CODECS`.

    Raises
    ------
    ValueError
        If ``codec`` is not one a record may name.
    """

    codec: Any = None
    _config: bytes = b""
    _decoders: dict[bytes, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.codec is not None:
            config = self.codec.get_config()
            self._config = json.dumps(config, sort_keys=True).encode()
            if codec_config(self._config) is None:
                raise ValueError(
                    f"compression codec {config.get('id')!r} cannot be stored: "
                    f"use one of {', '.join(sorted(ALLOWED_CODECS))}"
                )

    def encode(
        self, data: memoryview, digest: str, *, aligned: bool = False
    ) -> tuple[bytes, memoryview]:
        """Return ``(header + config, payload)`` for chunk ``digest``'s ``data``.

        With ``aligned``, the record is format 6: the header is padded with
        zeros to a multiple of 4 KiB, so the payload starts page-aligned in
        the file (what an ``O_DIRECT`` write of it needs).
        """
        payload, config, codec_id = data, b"", _CODEC_NONE
        if self.codec is not None:
            encoded = memoryview(self.codec.encode(data)).cast("B")
            if encoded.nbytes <= data.nbytes * (1 - _MIN_SAVING):
                payload, config, codec_id = encoded, self._config, _CODEC_NUMCODECS
        size = block_size(payload.nbytes)
        crcs = [
            xxh3_check(payload[at : at + size]) for at in range(0, payload.nbytes, size)
        ]
        crcs.append(xxh3_check(payload))
        table = struct.pack(f"<{len(crcs)}I", *crcs)
        fmt = _FORMAT_ALIGNED if aligned else _FORMAT
        fields = [
            _MAGIC,
            fmt,
            codec_id,
            len(config),
            0,
            data.nbytes,
            payload.nbytes,
            size // _PAGE,
        ]
        fields[4] = _header_crc(digest, CHUNK_HEADER.pack(*fields) + table, config)
        head = CHUNK_HEADER.pack(*fields) + table + config
        head += bytes(_payload_at(fmt, len(head)) - len(head))
        return head, payload

    @staticmethod
    def check(
        buffer: memoryview, expected: int | None, digest: str, *, lazy: bool = False
    ) -> tuple[ChunkRecord | None, str]:
        """Verify a record stored under ``digest``; return it, or why not.

        ``expected`` is the chunk's length, or ``None`` when unknown (the
        header's length is then taken). The reason is empty for a valid
        record. With ``lazy``, a raw payload's blocks are left to verify as
        they are read (the record's :attr:`~ChunkRecord.blocks`); the header,
        its binding to the key and a compressed payload are verified now.
        """
        if buffer.nbytes < _WHOLE_HEADER.size:
            return (
                None,
                f"is truncated ({buffer.nbytes} bytes, shorter than its header)",
            )
        magic, fmt = _WHOLE_HEADER.unpack_from(buffer)[:2]
        if magic != _MAGIC:
            return None, "is not a chunk record (bad magic)"
        if fmt == _FORMAT_WHOLE:
            return _check_whole(buffer, expected, digest)
        check = _CHECKS.get(fmt)
        if check is None:
            return None, f"has an unknown record format ({fmt})"
        fields = CHUNK_HEADER.unpack_from(buffer)
        codec, conf_len, crc, length, stored, units = fields[2:8]
        why = _check_fields(codec, conf_len, length, expected)
        if why:
            return None, why
        size = units * _PAGE
        if size != block_size(stored):
            return None, f"has blocks of {size} bytes, not {block_size(stored)}"
        start = CHUNK_HEADER.size + 4 * (-(-stored // size) + 1)
        table = buffer[CHUNK_HEADER.size : start]
        config = buffer[start : start + conf_len]
        payload = buffer[_payload_at(fmt, start + conf_len) :]
        if stored != payload.nbytes:
            return None, f"holds {payload.nbytes} payload bytes, its header {stored}"
        zeroed = CHUNK_HEADER.pack(*fields[:4], 0, *fields[5:])
        if _header_crc(digest, zeroed + bytes(table), config) != crc:
            return None, "failed its CRC32C check (damaged, or another chunk's record)"
        if conf_len and codec_config(config) is None:
            return None, "names a codec cachefs does not decode"
        *crcs, whole = struct.unpack(f"<{table.nbytes // 4}I", table)
        blocks = BlockCheck(payload, size, tuple(crcs), whole, check)
        if conf_len or not lazy:
            if not blocks.verify():
                return None, blocks.why
            return ChunkRecord(payload, bytes(config)), ""
        return ChunkRecord(payload, b"", blocks), ""

    @staticmethod
    def parse(buffer: memoryview, expected: int, digest: str) -> ChunkRecord | None:
        """Verify a record of chunk ``digest``; ``None`` if damaged."""
        return RecordCodec.check(buffer, expected, digest)[0]

    def decode(self, record: ChunkRecord, expected: int) -> memoryview | None:
        """Return the chunk bytes of a compressed record; ``None`` if damaged."""
        decoder = self._decoders.get(record.config)
        try:
            if decoder is None:
                config = codec_config(record.config)
                if config is None:  # parse() refuses these; never build one
                    return None
                import numcodecs

                decoder = numcodecs.get_codec(config)
                self._decoders[record.config] = decoder
            out = memoryview(decoder.decode(record.payload)).cast("B")
        except Exception:
            return None
        return out.toreadonly() if out.nbytes == expected else None


def _check_fields(codec: int, conf_len: int, length: int, expected: int | None) -> str:
    """Check a header's codec kind and length; return why not (or "")."""
    if codec not in (_CODEC_NONE, _CODEC_NUMCODECS) or (
        (codec == _CODEC_NUMCODECS) != (conf_len > 0)
    ):
        return "names an unknown codec kind"
    if expected is not None and length != expected:
        return f"holds {length} bytes, the chunk has {expected}"
    return ""


def _check_whole(
    buffer: memoryview, expected: int | None, digest: str
) -> tuple[ChunkRecord | None, str]:
    """Verify a format 2 record: one CRC32C over all of it."""
    fields = _WHOLE_HEADER.unpack_from(buffer)
    codec, conf_len, crc, length, stored = fields[2:7]
    body = buffer[_WHOLE_HEADER.size :]
    config, payload = body[:conf_len], body[conf_len:]
    if stored != payload.nbytes:
        return None, f"holds {payload.nbytes} payload bytes, its header {stored}"
    why = _check_fields(codec, conf_len, length, expected)
    if why:
        return None, why
    zeroed = _WHOLE_HEADER.pack(*fields[:4], 0, *fields[5:])
    whole = crc32c.crc32c(payload, _header_crc(digest, zeroed, config))
    if whole != crc:
        return None, "failed its CRC32C check (damaged, or another chunk's record)"
    if conf_len and codec_config(config) is None:
        return None, "names a codec cachefs does not decode"
    return ChunkRecord(payload, bytes(config)), ""


def _header_crc(digest: str, header: bytes, config: bytes | memoryview) -> int:
    crc = crc32c.crc32c(header, crc32c.crc32c(_digest_bytes(digest)))
    return int(crc32c.crc32c(config, crc))
